"""StyleGAN networks from their published files, in plain torch.

``reader`` turns NVIDIA network pickles and torch.save checkpoints into plain data without running code
named by the file; ``ops`` holds the shared resampling and modulated-convolution maths; ``sg2`` builds
StyleGAN2 generators (NVIDIA stylegan2-ada layout and rosinality's layout) from what the reader returns.
"""
