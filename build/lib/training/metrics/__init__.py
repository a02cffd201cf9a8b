"""Evaluation metrics for the trained models, one small module each (imported by module, none re-exported here,
so that importing one does not load the CLIP or I3D machinery of another):

- ``validation_loss``: held-out EDM loss at fixed sigmas and fixed noise seeds, comparable across runs.
- ``frechet``: Fréchet distance of video features; "fvd" only with I3D features, else ``fd_<extractor>``.
- ``motion_fidelity``: Spearman rho of requested motion buckets vs. the curation motion score of the samples.
- ``temporal_consistency``: mean CLIP similarity of consecutive generated frames.
"""
