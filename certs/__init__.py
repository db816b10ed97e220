"""The mesh certificate authority: root key material, signing, and the control plane's own
serving certificate."""
