"""A backup on disk or S3: storage, part files, checkpoint, manifest, lock, damage checks, compaction."""
