"""The loss maths: terms and their gradients, the composer that weighs them, logits and
labels read from what a model and a loss are given, and the drop-in loss.
"""
