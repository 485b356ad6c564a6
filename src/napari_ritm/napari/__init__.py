"""The napari layer: dock widgets, layer adapters, the prediction worker, commands, sample data and
the ``napari-ritm view`` launcher. Everything that imports napari, Qt or magicgui lives here.
"""
