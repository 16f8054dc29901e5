"""Real data and pretrained files from registry packages, prepared for fairseq."""
