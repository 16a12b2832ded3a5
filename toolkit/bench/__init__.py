"""`toolkit benchmark`: one driver (`driver.py`) whatever the backend (`native.py`, `browser.py`, `estimates.py`);
`benchmark.py` chooses the backends and where results go. Importing this package imports none of them."""
