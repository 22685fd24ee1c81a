# bash completion for gemma4ctl(1)                                    -*- shell-script -*-
_gemma4ctl() {
        local cur prev words cword
        _init_completion || return

        local commands="chat generate status tokenize detokenize bench version help"
        local global="--socket --json --timeout --help --version"
        local params="--max-tokens --temperature --top-p --top-k --min-p --repetition-penalty
                      --presence-penalty --frequency-penalty --seed --stop --logprobs --priority --deadline-ms"

        case $prev in
        --socket)
                _filedir sock
                [[ ${#COMPREPLY[@]} -eq 0 ]] && COMPREPLY=($(compgen -f -- "$cur"))
                return ;;
        --load)
                _filedir json
                return ;;
        --timeout|--max-tokens|--temperature|--top-p|--top-k|--min-p|--repetition-penalty|\
        --presence-penalty|--frequency-penalty|--seed|--stop|--logprobs|--priority|--deadline-ms|\
        --system|-c|--clients|-p|--prompt-tokens|-o|--output-tokens|-n|--requests|-r|--repeats|\
        -w|--warmup)
                return ;;
        esac

        # Find the command word, skipping global options and their arguments.
        local i cmd=""
        for ((i = 1; i < cword; i++)); do
                case ${words[i]} in
                --socket|--timeout) ((i++)) ;;
                -*) ;;
                *) cmd=${words[i]}; break ;;
                esac
        done

        if [[ -z $cmd ]]; then
                if [[ $cur == -* ]]; then
                        COMPREPLY=($(compgen -W "$global" -- "$cur"))
                else
                        COMPREPLY=($(compgen -W "$commands" -- "$cur"))
                fi
                return
        fi

        local opts="--help --json"
        case $cmd in
        chat)       opts+=" --system --thinking --hide-thinking --load $params" ;;
        generate)   opts+=" $params" ;;
        status)     opts+=" --wait" ;;
        tokenize)   opts+=" --special" ;;
        detokenize) opts+=" --special" ;;
        bench)      opts+=" --clients --prompt-tokens --output-tokens --requests --repeats --warmup $params" ;;
        esac
        [[ $cur == -* ]] && COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -F _gemma4ctl gemma4ctl
