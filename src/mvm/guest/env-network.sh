# mvm network (sourced by every launcher as the entrypoint uid): proxy variables,
# the CA bundle and the placeholders of secrets bound to domains (the values
# themselves never enter the guest: the host's proxy puts them in requests).
[ -r /run/mvm/net/env.sh ] && . /run/mvm/net/env.sh
