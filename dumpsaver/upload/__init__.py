"""Dumps leave the machine: ``dumpsaver upload`` sends saved dumps to an S3-compatible
store (s3.py) and/or over ssh (ssh.py), and keeps each local copy until the target
has confirmed all of it.

    pending dumps (local.py) -> per target: already there? -> full or summary
    -> vmcore (resumable), dmesg.txt, info.json last (the completeness marker)
    -> confirmed by checksum -> uploaded.json marker in the dump's directory
    -> deleted here only if upload_delete says so

``dumpsaver list --remote`` (fleet.py) reads the store back, grouped by kernel
release and panic signature.  Nothing here runs in the early-boot job:
dumpsaver-upload.service runs after network-online.target.
"""
