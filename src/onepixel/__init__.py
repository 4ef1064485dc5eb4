"""onepixel: one-pixel attacks, propagation maps and locality analysis.

A reproducible implementation of Vargas & Su, *Understanding the One-Pixel
Attack: Propagation Maps and Locality Analysis* (arXiv 1902.02947).
"""

__version__ = "0.1.0"
