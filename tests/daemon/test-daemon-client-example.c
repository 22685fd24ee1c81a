/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The libgemmaclient example program (tests/client/example.c, the one in libgemmaclient(3)) against a real
 * gemma4d: a 2-layer model with the real tokenizer, since the example sends a text prompt.
 *
 *   test-daemon-client-example EXAMPLE_BINARY
 *
 * Exit status: 0 pass, 1 fail, 77 skipped (no tokenizer fixture: run scripts/setup.sh).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, "FAIL: " __VA_ARGS__); fputc('\n', stderr); \
                                               goto fail; } } while (0)

int main(int argc, char **argv) {
        const char *src = getenv("GEMMA4D_SOURCE_ROOT");
        char tok[1024], args[1200], out[512], text[8192] = "";
        struct daemon d = { .pid = -1 };
        int st;

        if (argc < 2) {
                fprintf(stderr, "usage: %s EXAMPLE_BINARY\n", argv[0]);
                return 2;
        }
        signal(SIGPIPE, SIG_IGN);
        snprintf(tok, sizeof tok, "%s/.deps/fixtures/tokenizer.json", src ? src : ".");
        if (access(tok, R_OK) < 0) {
                printf("SKIP: %s missing (run scripts/setup.sh)\n", tok);
                return 77;
        }
        snprintf(args, sizeof args, "--layers 2 --tokenizer %s", tok);
        const char *model = h_model("with-tokenizer", args, true);
        /* the example asks for 256 tokens after a short prompt: the context must hold both (a request
         * that cannot is refused with too_long, docs/protocol.md); a small KV pool keeps boot quick */
        struct daemon_opts o = { .model = model, .listen_fd = -1,
                                 .yaml = "limits:\n  max_model_len: 320\n  max_num_seqs: 2\n"
                                         "  max_batched_tokens: 64\n" };
        CHECK(daemon_start(&d, &o) == 0, "gemma4d did not start");

        snprintf(out, sizeof out, "%s/example.out", d.dir);
        pid_t pid = fork();
        CHECK(pid >= 0, "fork: %s", strerror(errno));
        if (pid == 0) {
                int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
                if (fd < 0)
                        _exit(126);
                dup2(fd, 1);
                setenv("GEMMA4D_SOCKET", d.sock, 1);
                execl(argv[1], argv[1], "Write a haiku about the sea.", (char *) NULL);
                _exit(127);
        }
        double end = h_now() + h_timeout(H_REQUEST_TIMEOUT_S);
        pid_t w;
        while ((w = waitpid(pid, &st, WNOHANG)) == 0 && h_now() < end)
                usleep(20000);
        if (w == 0) {
                kill(pid, SIGKILL);
                waitpid(pid, &st, 0);
                CHECK(false, "the example did not finish in time");
        }
        FILE *f = fopen(out, "r");
        CHECK(f, "no output");
        size_t n = fread(text, 1, sizeof text - 1, f);
        text[n] = 0;
        fclose(f);
        printf("example output:\n%s\n", text);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the example exited with status %d", st);
        CHECK(strstr(text, "model with-tokenizer, context 320 tokens"), "no welcome line");
        /* "[length: N prompt + M output tokens, ...]" (or "stop" if the random model ends its turn): the
         * daemon tokenized the prompt and generated */
        const char *sum = strstr(text, "\n[");
        char reason[16] = "";
        unsigned prompt = 0, output = 0;
        CHECK(sum && sscanf(sum, "\n[%15[a-z]: %u prompt + %u output tokens", reason, &prompt, &output) == 3,
              "no summary line");
        CHECK(strcmp(reason, "length") == 0 || strcmp(reason, "stop") == 0, "finish reason %s", reason);
        CHECK(prompt >= 5 && output > 0 && prompt + output <= 320, "odd counts: %u prompt, %u output", prompt,
              output);
        CHECK(daemon_stop(&d) == 0, "gemma4d did not exit cleanly");
        printf("PASS\n");
        return 0;
fail:
        if (d.pid > 0)
                (void) daemon_stop(&d);
        return 1;
}
