"""The units of the training loop (``stages/train.py``): run set-up and resume, stop signals, step health,
saving and validation, one concept a module."""
