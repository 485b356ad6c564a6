"""Evaluation: benchmark and microscopy dataset readers, the NoC/mIoU evaluator and reports, and a
classical click baseline (GrabCut) behind the same predictor protocol as the model.
"""
