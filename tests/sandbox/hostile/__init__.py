"""The hostile-job suite: each module attacks the sandbox as the author of an untrusted job would,
one class of escape or bypass per module (``test_<class>.py``), with real containers."""
