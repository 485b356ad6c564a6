"""napari-ritm training package: fine-tune or train RITM models with the reference recipe.

Nothing here imports napari or Qt; the "Fine-tune" widget lives in napari_ritm._finetune_widget.
"""

__all__: list[str] = []
