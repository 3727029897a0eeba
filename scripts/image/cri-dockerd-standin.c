/*
 * A stand-in for /opt/rke-tools/bin/cri-dockerd when the upstream release cannot be fetched
 * (CI has no network). Static, so it runs in any image like the real one. `--version`
 * answers and exits; otherwise it prints its arguments and waits like a daemon, which is all
 * entrypoint.sh's kubelet path needs from it.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        puts("cri-dockerd 0.0.0-sidekick-standin");
        return 0;
    }
    fputs("cri-dockerd stand-in:", stderr);
    for (int i = 1; i < argc; i++)
        fprintf(stderr, " %s", argv[i]);
    fputc('\n', stderr);
    for (;;)
        pause();
}
