"""The vault server: the LocalVault over HTTP, in the wire protocol of the official `alter-sdk` client.

`app` builds the Starlette application and serves it; `wire`, `signing` and `keys` are shared with
`RemoteVault`, the client side, so importing them does not pull in the server.
"""
