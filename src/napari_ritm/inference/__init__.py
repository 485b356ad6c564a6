"""The inference session: clicks, image preprocessing, zoom-in/resize/flip transforms and
:class:`~napari_ritm.inference.session.ClickSession`, the one path from clicks to a mask.

Submodules are imported directly (``from napari_ritm.inference.session import ClickSession``);
this package itself imports nothing, so reading clicks or preprocessing does not load torch.
"""
