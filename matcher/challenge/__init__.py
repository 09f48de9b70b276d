"""The challenge's code-execution layout: read and validate its CSVs, run the cascade over its scenarios,
write and score the submission, build development scenarios from a labelled catalogue, pack the zip."""
