"""Grading promoted models: the independent judge and the promoted CNN score the VAE's samples
(`judging`), latent walks (`interpolation`), the grade (`rubric`), the IWAE bound (`likelihood`),
all run by `grading`; `predict` classifies image files with the promoted CNN."""
