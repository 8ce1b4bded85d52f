/*
 * measure: runs a command and prints what it cost as one line,
 *
 *   wall=SECONDS cpu=SECONDS maxrss_kb=KB status=CODE
 *
 * wall is measured on CLOCK_MONOTONIC around fork and wait4. cpu and maxrss
 * come from wait4's resource usage, which includes every descendant the
 * command waited for, so a loop that starts one curl process per call is
 * charged for all of them. The command's own stdout and stderr pass through.
 *
 * Usage: measure COMMAND [ARG...]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double seconds(struct timespec t)
{
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double timeval_seconds(struct timeval t)
{
  return (double)t.tv_sec + (double)t.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
  struct timespec start, end;
  struct rusage usage;
  int status = 0;
  pid_t pid;

  if (argc < 2) {
    fprintf(stderr, "usage: measure COMMAND [ARG...]\n");
    return 2;
  }
  clock_gettime(CLOCK_MONOTONIC, &start);
  pid = fork();
  if (pid < 0) {
    perror("measure: fork");
    return 2;
  }
  if (pid == 0) {
    execvp(argv[1], argv + 1);
    fprintf(stderr, "measure: cannot run %s: %s\n", argv[1], strerror(errno));
    _exit(127);
  }
  while (wait4(pid, &status, 0, &usage) < 0) {
    if (errno != EINTR) {
      perror("measure: wait4");
      return 2;
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &end);
  fprintf(stderr, "measure: wall=%.6f cpu=%.6f maxrss_kb=%ld status=%d\n",
          seconds(end) - seconds(start),
          timeval_seconds(usage.ru_utime) + timeval_seconds(usage.ru_stime),
          usage.ru_maxrss,
          WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
