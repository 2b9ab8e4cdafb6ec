"""EBD: block-wise Metropolis–Hastings decoding toward p_LM · exp(−E/τ) (:mod:`impetus.decoding.mh`)."""
