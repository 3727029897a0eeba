"""nginx-proxy: the worker nodes' TCP load balancer in front of the kube-apiservers.

``config`` decides what to render (pure), ``nginx.conf.j2`` is the template shipped as
package data, ``launcher`` writes, checks and execs nginx.
"""
