"""quickdraft: a lossless speculative decoding engine.

One backend scores a draft tree in one forward pass, one verifier accepts what the target model
agrees with, and many drafters propose. Greedy output equals plain decoding token for token;
sampled output has exactly the target's distribution.
"""

__version__ = "0.1.0"
