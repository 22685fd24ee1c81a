/* Stream a completion from gemma4d and print it with its token counts. */
#include <stdio.h>
#include <gemma4/gemmaclient.h>

static int on_event(gc_request *req, enum gc_event_type type, const gc_event *ev, void *userdata) {
        if (type == GC_EVENT_DELTA) {
                fputs(gc_event_content(ev), stdout);
                fflush(stdout);
        }
        return 0;       /* nonzero would cancel the request */
}

int main(int argc, char **argv) {
        const char *prompt = argc > 1 ? argv[1] : "Write a haiku about the sea.";
        gc_client *client;
        gc_params *params;
        gc_result *result;
        int r;

        /* NULL: the socket(s) in $GEMMA4D_SOCKET, else /run/gemma4d/0.sock; 0: default timeout. */
        r = gc_client_new(&client, NULL, 0);
        if (r < 0) {
                fprintf(stderr, "connect: %s\n", gc_strerror(r));
                return 1;
        }
        printf("model %s, context %llu tokens\n", gc_client_info_str(client, 0, GC_INFO_MODEL),
               (unsigned long long) gc_client_info_num(client, 0, GC_INFO_MAX_MODEL_LEN));

        r = gc_params_new(&params);
        if (r == 0)
                r = gc_params_set_max_tokens(params, 256);
        if (r == 0)
                r = gc_params_set_temperature(params, 0.7);
        if (r == 0)
                r = gc_generate_stream(client, prompt, params, on_event, NULL, &result);
        gc_params_free(params);
        if (r < 0) {
                fprintf(stderr, "generate: %s\n", gc_strerror(r));
                gc_client_free(client);
                return 1;
        }
        if (gc_result_error(result) != 0)
                fprintf(stderr, "\nfailed: %s\n", gc_result_error_message(result));
        else
                printf("\n[%s: %u prompt + %u output tokens, first token after %.1f ms]\n",
                       gc_result_finish_string(result), gc_result_prompt_tokens(result),
                       gc_result_completion_tokens(result), gc_result_ttft_ms(result));
        r = gc_result_error(result) ? 1 : 0;
        gc_result_free(result);
        gc_client_free(client);
        return r;
}
