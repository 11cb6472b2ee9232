"""Reports: tables and plots of results (matplotlib is imported inside the functions that draw)."""
