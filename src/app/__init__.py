"""The web app (`python -m src.app`): the study's figures and seed A's tabs over a results folder,
and live perturbation of an image's E_post with `mini`; the same library the stages use."""
