"""nginx-proxy: the worker nodes' TCP load balancer in front of the kube-apiservers.

``config`` decides what to render (pure), ``nginx.conf.j2`` is the template shipped as
package data, ``launcher`` writes, checks and execs nginx. With active health checks
(opt-in), ``checked`` runs nginx under ``supervisor`` with the ``checker`` thread beside it,
which probes (``probe``) and decides (``health``, pure) which hosts belong in the upstream.
"""
