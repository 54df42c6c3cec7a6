"""See irtoolkit/__init__.py: registering modules are imported automatically."""
