"""Content-addressed blob store on disk."""
