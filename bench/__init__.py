"""Benchmark of db-backup against the old system's way. Not a test.

One run starts its own throwaway PostgreSQL cluster (runner/pg/cluster.py) and an in-process
moto S3 server (or, with ``--pg-url`` and ``--s3-bucket``, uses an existing server such as RDS and
real S3), builds a pgbench database plus a table of text at each requested scale (``--data
reference``, the default: random md5 hex, the reference data; ``--data mixed``:
realistic, partly compressible rows), and measures, in the same run and on the same data:

* backup: db-backup (the CLI as a subprocess) to S3 for each compression choice, versus the old
  way (``pg_dump -Fc`` with its default gzip to a file, then boto3 ``upload_file``), versus the
  pipeline floor (the slower of db-backup's dump pipeline to /dev/null and uploading the finished
  dump file), plus the same backup into a local folder (no S3 emulator);
* restore: db-backup (stream and parallel modes, and an old dump as a legacy backup) versus plain
  ``pg_restore`` of the same dump, ``pg_restore -j1`` of the old way's dump, and a restore floor
  (``pg_restore -j1`` of an uncompressed dump file); ``pg_restore -j1`` and ``-j2`` of that file,
  and db-backup's stream and parallel restores, with the client pinned to one core (``taskset``)
  and the server free, as a 1-vCPU task restoring into a multi-core RDS server;
* whether ``pg_restore -j2`` works on a pipe-written archive (``pg_dump -Fc -Z0 | zstd``) after
  decompression to a file, and how long it takes versus streaming;
* peak RSS of the db-backup Python process itself (not its pg_dump/zstd/pg_restore children);
* CPU seconds of the tools and of the S3 emulator for every step.

Run ``.venv/bin/python -m bench --help`` from the repository root; bench/README.md explains how to
read the output.
"""
