"""Who may see what: the device identity (identity.py), viewer access and its store
(viewer_auth.py, viewers.py) and the owner's commands to share and revoke (sharing.py)."""
