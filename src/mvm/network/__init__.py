"""Guest networking: egress policy, secrets bound to domains, the per-VM CA and
the host-side egress proxy (with its tiny DNS responder).

The guest never talks to the outside world directly: QEMU user networking
runs with ``restrict=on`` and forwards only the proxy's guest-visible
address (:data:`GUEST_PROXY_IP`) to Unix sockets served by
``python -m mvm.network.proxyd``.  See docs/network.md for the threat model.
"""

GUEST_PROXY_IP = "10.0.2.100"
HTTP_PORT = 80  # transparent HTTP and the explicit proxy (absolute-form, CONNECT)
PROXY_PORT = 3128  # what HTTP_PROXY points at (same handler as HTTP_PORT)
TLS_PORT = 443  # transparent TLS, routed by SNI
DNS_PORT = 53  # DNS over TCP (the guest's resolv.conf says `options use-vc`)
