"""Data: curation into webdataset shards, resumable streaming, multi-crop augmentation, masking, collate."""
