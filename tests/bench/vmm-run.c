/* Runs a VMM and times it from its exec, for boot-bench's side-by-side
 * runs (tests/src/bin/boot-bench.rs):
 *
 *   vmm-run LABEL MARKER CMD [ARGS...]
 *
 * passes the VMM's output through, and prints when it ends
 *
 *   vmm-run: LABEL init_ms=T exit_ms=T maxrss_kib=N user_ms=T sys_ms=T status=S
 *
 * init_ms: from just before exec to the first output line holding MARKER
 * (the guest's /init printing it on the serial console); exit_ms: to the
 * VMM's exit; maxrss_kib: its peak resident set (wait4's ru_maxrss);
 * user_ms, sys_ms: its CPU time (guest time counts as user time). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: vmm-run LABEL MARKER CMD [ARGS...]\n");
        return 2;
    }
    const char *label = argv[1], *marker = argv[2];
    int fds[2];
    if (pipe(fds) != 0) {
        perror("vmm-run: pipe");
        return 1;
    }
    double start = now_ms();
    pid_t pid = fork();
    if (pid < 0) {
        perror("vmm-run: fork");
        return 1;
    }
    if (pid == 0) {
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        execv(argv[3], argv + 3);
        perror("vmm-run: exec");
        _exit(127);
    }
    close(fds[1]);
    FILE *out = fdopen(fds[0], "r");
    char line[4096];
    double init = -1;
    const char *stamp_env = getenv("VMM_RUN_STAMP");
    int stamp = stamp_env && stamp_env[0] == '1';
    while (out && fgets(line, sizeof line, out)) {
        if (init < 0 && strstr(line, marker))
            init = now_ms() - start;
        if (stamp)
            printf("+%.1f ", now_ms() - start);
        fputs(line, stdout);
    }
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    wait4(pid, &status, 0, &ru);
    double end = now_ms() - start;
    double user = ru.ru_utime.tv_sec * 1e3 + ru.ru_utime.tv_usec / 1e3;
    double sys = ru.ru_stime.tv_sec * 1e3 + ru.ru_stime.tv_usec / 1e3;
    printf("vmm-run: %s init_ms=%.1f exit_ms=%.1f maxrss_kib=%ld user_ms=%.0f sys_ms=%.0f status=%d\n",
           label, init, end, ru.ru_maxrss, user, sys,
           WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    fflush(stdout);
    return 0;
}
