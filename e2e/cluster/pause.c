/* The pod sandbox's init: sleep forever, reap zombies, exit on SIGINT/SIGTERM.
 * Built with gcc -static so the image is one file from scratch (no registry pull). */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
    return 0;
}
