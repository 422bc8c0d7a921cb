"""The on-volume cache protocol shared by `fetch`, `warm`, `gc` and `stats`."""
