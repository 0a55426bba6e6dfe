"""Forges (GitHub, GitLab, Gitea/Forgejo): web-hook signatures, events, sealed secrets.

``signatures`` and ``events`` are pure; ``sealing`` encrypts the secrets a repository is
registered with; ``mirror`` fetches a commit's pipeline file with a hardened ``git``.
"""
