"""The private machinery that writes a merged file (like h5py's ``_hl``).

- :mod:`.atomic`: the temporary file beside the output, fsync, rename; stale temps;
  the free-space check; the refusal to overwrite an input;
- :mod:`.outfile`: the merged HDF5 file itself, contiguous or virtual;
- :mod:`.copy`: a shard's rows into the output, as raw bytes or through h5py;
- :mod:`.reorder`: the rows in the run's index order, block by block;
- :mod:`.sysio`: the operating system's calls (``fallocate``, ``sync_file_range``,
  ``copy_file_range``) and the writeback thread.
"""
