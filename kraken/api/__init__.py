"""Klein applications, one class per HTTP surface."""
