"""`ctdiffusion view`: a browser viewer (trame-slicer) for real vs synthetic volumes, the quality report and a
running training. Optional: needs `pip install ctdiffusion[web]`. Only `sources`, `report` and `volume_cache`
are importable without the web extra; `app` imports trame and slicer-core.
"""
