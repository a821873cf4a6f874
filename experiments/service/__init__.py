"""Private classification as a service: compute parties (and the dealer) that stay up, a
model published once, any number of clients at any time.

* `server.serve` runs one compute party or the dealer until stopped (`sottovoce serve`);
* `client.publish` shares a model owner's model with a running service (`sottovoce publish`);
* `client.classify` is a client (`sottovoce classify --cluster`); `client.status` asks every
  role how it is (`sottovoce status`);
* `local.LocalService` starts every role of a service as a process on this machine.

How it works is in docs/service.md.
"""
