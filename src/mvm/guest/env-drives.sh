# mvm: config and secrets into the environment.  Sourced by every launcher
# (entrypoint and services) as the entrypoint's uid, after the privilege drop.
#   /mnt/config/env.sh   a shell fragment, sourced with `set -a` (plain
#                        assignments are exported)
#   /mnt/secrets/*.env   KEY=VALUE lines, read literally: no expansion of $, `
#                        or \ (secrets are often full of them), "export " and
#                        one pair of surrounding quotes are stripped, blank
#                        lines and # comments skipped.  Secrets win over config.
if [ -r /mnt/config/env.sh ]; then
    set -a
    . /mnt/config/env.sh
    set +a
fi
_mvm_cr=$'\r'  # busybox ash: no fork
for _mvm_env in /mnt/secrets/*.env; do
    [ -f "$_mvm_env" ] && [ -r "$_mvm_env" ] || continue
    while IFS= read -r _mvm_line || [ -n "$_mvm_line" ]; do
        _mvm_line=${_mvm_line%"$_mvm_cr"}
        case "$_mvm_line" in ''|'#'*) continue ;; esac
        _mvm_line=${_mvm_line#export }
        case "$_mvm_line" in *=*) ;; *) continue ;; esac
        _mvm_key=${_mvm_line%%=*}
        case "$_mvm_key" in ''|[0-9]*|*[!A-Za-z0-9_]*) continue ;; esac
        _mvm_val=${_mvm_line#*=}
        case "$_mvm_val" in
            \"*\") _mvm_val=${_mvm_val#\"}; _mvm_val=${_mvm_val%\"} ;;
            \'*\') _mvm_val=${_mvm_val#\'}; _mvm_val=${_mvm_val%\'} ;;
        esac
        export "$_mvm_key=$_mvm_val"
    done < "$_mvm_env"
done
unset _mvm_cr _mvm_env _mvm_line _mvm_key _mvm_val
