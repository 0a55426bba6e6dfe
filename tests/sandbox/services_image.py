"""The service image of the services tests: the suite's Debian rootfs (as a layer) under a layer
with a small TCP server in Perl (Debian's perl-base has IO::Socket::INET), pushed to a loopback
registry (Debian's ``docker-registry``) with the config a real service image has: Entrypoint,
ExposedPorts 8080/tcp, a non-root User, Env.

The server answers every connection with one line (``hello from <GREETING> as uid <uid>``),
logs ``listening on <port>`` on stdout and ``accepted`` for each connection on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.sandbox.images.layers import compress, member, tar_bytes
from tests.sandbox.images.registry import LAYER_TYPES, OCI_CONFIG, OCI_MANIFEST, Layout, sha

SERVER = b"""use strict; use IO::Socket::INET;
$| = 1;
my $port = $ENV{PORT} || 8080;
my $server = IO::Socket::INET->new(LocalAddr => '0.0.0.0', LocalPort => $port, Listen => 16, ReuseAddr => 1)
    or die "cannot listen on $port: $!";
print "listening on $port\\n";
while (my $client = $server->accept) {
    print STDERR "accepted\\n";
    print $client "hello from $ENV{GREETING} as uid $<\\n";
    close $client;
}
"""
REFERENCE = "test/server:1"


def server_image(layout: Layout, debian_tar: bytes) -> dict[str, object]:
    """The manifest descriptor of the server image (Debian + the server) in ``layout``."""
    layers = [(debian_tar, "zstd"), (tar_bytes([member("srv/serve.pl", SERVER, mode=0o755)]), "gzip")]
    descriptors, diff_ids = [], []
    for raw, how in layers:
        descriptors.append({"mediaType": LAYER_TYPES[how], **layout.blob(compress(raw, how))})
        diff_ids.append(sha(raw))
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                 "GREETING=the image"],
                         "Entrypoint": ["perl", "/srv/serve.pl"], "User": "nobody", "WorkingDir": "/srv",
                         "ExposedPorts": {"8080/tcp": {}}}}
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, **layout.blob(json.dumps(config).encode())},
                "layers": descriptors}
    return {"mediaType": OCI_MANIFEST, **layout.blob(json.dumps(manifest).encode()),
            "platform": {"os": "linux", "architecture": "amd64"}}


def make_layout(root: Path, debian_tar: bytes) -> Layout:
    layout = Layout(root)
    layout.tag("server", server_image(layout, debian_tar))
    return layout
