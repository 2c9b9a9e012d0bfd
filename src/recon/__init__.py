"""E_post -> E_pre reconstructors: the model and its files, the paired vectors it learns from,
its fit loop, the export of reconstructed shards and their scoring.

The library behind the stages src/train/train_recon, src/train/export_recon and
src/eval/eval_recon (and eval_captions' reconstructed inputs). Named for what it holds, not for
the stage folder: it is everything about one kind of model, from training to scoring.
"""
