"""Pod sources: where memstate learns which pods run on the node.

- `observation`: what every source reports (`ObservedPod`, the full set it sees) and its health;
- `tracker`: the one place observations become input events (diffing, precedence, lifecycle);
- `feed`: serialises the sources through the tracker into the daemon's writer;
- `kubelet`, `apiserver`: the kubelet's `/pods` poll (on `httpget`, one kept-alive connection:
  h11 over trio) and the API server's list + watch (on httpx, trio), with `kube` (the Pod fields
  memstate decodes) and `connection` (credentials);
- `static`: derived UIDs for static pod manifests without `metadata.uid`;
- `configure`: builds the sources the settings name.

The manifest directory (memstate.node.manifests) is a source too. Operator documentation:
docs/operations.md, "Pod sources".
"""
