"""The paper's whole study on one model and one data set: head attribution with baselines,
layer distribution, semantics against appearance, flow sweeps, image-token attribution,
cross-task overlap and seed stability, each finding tested (``findings.json``)."""
