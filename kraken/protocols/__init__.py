"""Twisted protocols: peer wire protocol and HTTP clients of the tracker."""
