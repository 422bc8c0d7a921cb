"""Tests of the cache protocol and `kserve-cache fetch`, with real files, processes and servers."""
