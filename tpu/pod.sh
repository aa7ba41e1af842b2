#!/usr/bin/env bash
# Runs mind_jax on a Cloud TPU VM or a multi-host pod slice, from your own machine (gcloud).
#
#   export TPU_NAME=mind ZONE=europe-west4-a ACCELERATOR=v6e-8     # PROJECT= if not gcloud's default
#   tpu/pod.sh create [--config FILE [key=value ...]]
#                                          # the TPU VM / slice (SPOT=1 for a spot one); with a
#                                          # job config, only once `python -m mind_jax.plan`
#                                          # (run here, needs mind_jax[tpu]) says the job fits
#   tpu/pod.sh setup                       # this checkout (git HEAD) + a venv with jax[tpu] on every host
#   tpu/pod.sh run -- python -m mind_jax.generate --config configs/generate-llama3.1-8b.yaml
#   tpu/pod.sh logs [WORKER]               # follow one host's log (worker 0 by default)
#   tpu/pod.sh stop                        # stop the job and its workers on every host; `run` resumes
#   tpu/pod.sh delete
#
# `run` starts the same command on every host at once, as a multi-host slice needs: JAX's
# distributed runtime connects the hosts, and mind_jax.generate gives each host its own share
# of the documents and its own part files. The job runs detached (closing your terminal does
# not stop it), logging to ~/mind_jax-logs/ on each host. Write output.dir to gs:// on a spot
# slice: after a preemption, create + setup + the same run resume where the job stopped.
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "tpu/pod.sh: $*" >&2; exit 2; }

REMOTE_DIR=mind_jax
REMOTE_VENV=mind_jax-venv
LOG_DIR=mind_jax-logs

# The TPU software version each generation boots with (Cloud TPU's runtime versions for JAX).
runtime_for() {
  case "$1" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

gcloud_tpu() {
  local args=(gcloud compute tpus tpu-vm "$@" --zone="$ZONE")
  [[ -n "${PROJECT:-}" ]] && args+=(--project="$PROJECT")
  if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q ' "${args[@]}"; echo
  else
    "${args[@]}"
  fi
}

on_hosts() {  # on_hosts WORKER REMOTE_SHELL_COMMAND
  gcloud_tpu ssh "$TPU_NAME" --worker="$1" --command="$2"
}

# The remote command for `run`. The user's words are quoted once here, so that spaces, quotes
# and $ in key=value overrides reach Python unchanged. The job runs in its own session (setsid:
# it outlives the ssh connection, and `stop` can end it with all its worker processes) and
# records its process id, which also keeps a second `run` from starting beside it.
launch_command() {
  local job pid="~/$LOG_DIR/run.pid" log="~/$LOG_DIR/run-\$(hostname).log"
  job=$(printf 'echo $$ > %s; exec %s' "$pid" "$(printf '%q ' "$@")")
  echo "mkdir -p ~/$LOG_DIR || exit 1;" \
       "if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null; then" \
       "echo \"\$(hostname): a job is already running (pid \$(cat $pid)); tpu/pod.sh stop first\"; exit 1;" \
       "fi; rm -f $pid; cd ~/$REMOTE_DIR && . ~/$REMOTE_VENV/bin/activate || exit 1;" \
       "setsid nohup bash -c $(printf '%q' "$job") > $log 2>&1 < /dev/null &" \
       "echo \"\$(hostname): started, log $log\""
}

stop_command() {
  local pid="~/$LOG_DIR/run.pid"
  echo "if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null; then" \
       "kill -TERM -- -\"\$(cat $pid)\" && rm -f $pid && echo \"\$(hostname): stopped\";" \
       "else echo \"\$(hostname): nothing running\"; fi"
}

main() {
  local command="${1:-}"
  [[ -z "$command" || "$command" == -h || "$command" == --help ]] && { usage; exit 0; }
  shift
  [[ -n "${TPU_NAME:-}" ]] || die "set TPU_NAME (the TPU VM's name)"
  [[ -n "${ZONE:-}" ]] || die "set ZONE (e.g. europe-west4-a)"
  case "$command" in
    create)
      local accelerator="${ACCELERATOR:-v6e-8}" runtime="${RUNTIME:-}"
      [[ -n "$runtime" ]] || runtime=$(runtime_for "$accelerator") \
        || die "no known runtime version for ACCELERATOR=$accelerator; set RUNTIME"
      if [[ $# -gt 0 ]]; then
        # A slice is paid for from the moment it exists: compile the job for it first.
        "${PYTHON:-python3}" -m mind_jax.plan --topology "$accelerator" "$@" \
          || die "not creating $accelerator: the job does not fit it (or could not be planned), see above"
      else
        echo "tpu/pod.sh: creating $accelerator without a plan (pass --config FILE to check the job fits)" >&2
      fi
      local extra=()
      [[ -n "${SPOT:-}" ]] && extra+=(--spot)
      gcloud_tpu create "$TPU_NAME" --accelerator-type="$accelerator" --version="$runtime" \
        ${extra[@]+"${extra[@]}"} ;;
    setup)
      local root archive
      root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
      archive=$(mktemp -d)/mind_jax.tar.gz
      [[ -z "$(git -C "$root" status --porcelain --untracked-files=no)" ]] \
        || echo "tpu/pod.sh: uncommitted changes are not copied (git HEAD is)" >&2
      git -C "$root" archive --format=tar.gz -o "$archive" HEAD
      gcloud_tpu scp "$archive" "$TPU_NAME:~/mind_jax.tar.gz" --worker=all
      on_hosts all "rm -rf ~/$REMOTE_DIR && mkdir ~/$REMOTE_DIR && tar -xzf ~/mind_jax.tar.gz -C ~/$REMOTE_DIR \
        && python3 -m venv ~/$REMOTE_VENV && . ~/$REMOTE_VENV/bin/activate \
        && pip install -q --upgrade pip && pip install -q -e ~/$REMOTE_DIR'[tpu]' \
        && python -c 'import jax; print(jax.process_index(), jax.device_count(), jax.devices()[0].device_kind)'" ;;
    run)
      [[ "${1:-}" == -- ]] && shift
      [[ $# -gt 0 ]] || die "run needs a command, e.g. run -- python -m mind_jax.generate ..."
      on_hosts all "$(launch_command "$@")" ;;
    logs)
      on_hosts "${1:-0}" "tail -n 200 -F ~/$LOG_DIR/run-\$(hostname).log" ;;
    stop)
      # A generate job killed at any moment resumes from what it wrote.
      on_hosts all "$(stop_command)" ;;
    delete)
      gcloud_tpu delete "$TPU_NAME" --quiet ;;
    *)
      die "unknown command '$command' (create, setup, run, logs, stop, delete; --help)" ;;
  esac
}

main "$@"
