/*
 * pinnace-oci's front end: `start` and `delete` of a plain container without an interpreter.
 *
 * Engines run one runtime process per verb, and a CPython process costs ~8 ms before it
 * runs a line of ours, against ~4 ms for the whole of `runc state`. `create` has real
 * work to do and stays in Python; `start` (read one byte from a fifo) and `delete` of a
 * stopped container (two rmdirs and a few unlinks) are almost nothing but that start-up.
 * runc makes the same trade the other way round: its nsexec is C, for the part where
 * Go's runtime is in the way.
 *
 * This program decides nothing about containers. `create` (runtime/create.py) writes
 * the record `front-end` into the container's directory only when start and delete
 * need no more than this file does (no poststart or poststop hooks, a cgroup of its
 * own). Everything else, including every error this file could not word exactly as
 * the Python runtime does, is handed to the Python runtime unchanged: execv of the
 * launcher `pinnace-oci.py` beside this program's real path, before anything was
 * changed or after a step the Python runtime redoes safely.
 * tests/integration/test_front_end.py checks each hand-over and each fast path.
 *
 * Build: cc -O2 -o pinnace-oci front_end.c (runtime/launcher.py does this; the
 * program is relocatable, so one build serves any copy of the launcher beside it).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PYTHON_LAUNCHER "pinnace-oci.py"
#define RECORD "front-end"
#define RECORD_HEADER "pinnace-oci front-end 1\n"
#define FIFO "exec.fifo"
#define STATE "state.json"
#define DEFAULT_ROOT "/run/pinnace-oci"
#define DEFAULT_CGROUP_PARENT "pinnace"
#define START_TIMEOUT_MS 60000
#define POLL_MS 50
#define DESTROY_TIMEOUT_MS 10000 /* cgroups/manager.py's DEFAULT_TIMEOUT */

static char **program_argv;

/* The Python runtime takes the invocation as it came: the launcher beside this program
 * (through symlinks to it, as /proc/self/exe resolves them). Every fd this file opens
 * is O_CLOEXEC, so the exec also drops the container directory's lock. */
static _Noreturn void hand_over(void)
{
	char path[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", path, sizeof path - sizeof PYTHON_LAUNCHER - 1);
	char *slash;
	if (n <= 0 || (size_t)n >= sizeof path - sizeof PYTHON_LAUNCHER - 1 ||
	    !(slash = memrchr(path, '/', (size_t)n))) {
		fprintf(stderr, "pinnace-oci: cannot find its own path in /proc/self/exe\n");
		_exit(127);
	}
	strcpy(slash + 1, PYTHON_LAUNCHER);
	execv(path, program_argv);
	fprintf(stderr, "pinnace-oci: cannot run %s: %s\n", path, strerror(errno));
	_exit(127);
}

struct invocation {
	const char *root;
	const char *log;
	int log_json;
	const char *verb; /* "start" or "delete" */
	const char *id;
	int force;
};

/* runc's global options as runtime/cli.py's fast_parse takes them; anything else
 * (--debug, --version, help, unknown or malformed options) goes to Python. */
static int parse(int argc, char **argv, struct invocation *inv)
{
	int i = 1;
	inv->root = DEFAULT_ROOT;
	inv->log = NULL;
	inv->log_json = 0;
	inv->force = 0;
	inv->id = NULL;
	for (; i < argc && argv[i][0] == '-'; i++) {
		const char *arg = argv[i], *eq = strchr(arg, '=');
		size_t n = eq ? (size_t)(eq - arg) : strlen(arg);
		const char *value;
		if (!eq && strcmp(arg, "--systemd-cgroup") == 0)
			continue; /* start and delete do not look at it */
		if (!(n == 6 && strncmp(arg, "--root", n) == 0) &&
		    !(n == 5 && strncmp(arg, "--log", n) == 0) &&
		    !(n == 12 && strncmp(arg, "--log-format", n) == 0) &&
		    !(n == 6 && strncmp(arg, "--criu", n) == 0) &&
		    !(n == 10 && strncmp(arg, "--rootless", n) == 0))
			return 0;
		if (eq) {
			value = eq + 1;
		} else {
			if (i + 1 == argc || argv[i + 1][0] == '-')
				return 0;
			value = argv[++i];
		}
		if (n == 6 && strncmp(arg, "--root", n) == 0) {
			inv->root = value;
		} else if (n == 5) {
			inv->log = value;
		} else if (n == 12) {
			if (strcmp(value, "json") == 0)
				inv->log_json = 1;
			else if (strcmp(value, "text") == 0)
				inv->log_json = 0;
			else
				return 0;
		}
	}
	if (i == argc || (strcmp(argv[i], "start") != 0 && strcmp(argv[i], "delete") != 0))
		return 0;
	inv->verb = argv[i];
	for (i++; i < argc; i++) {
		if (argv[i][0] == '-') {
			if (strcmp(inv->verb, "delete") == 0 &&
			    (strcmp(argv[i], "-f") == 0 || strcmp(argv[i], "--force") == 0)) {
				inv->force = 1;
				continue;
			}
			return 0;
		}
		if (inv->id)
			return 0;
		inv->id = argv[i];
	}
	return inv->id != NULL;
}

/* runc's rule (Go's ASCII \w plus + - .), as runtime/state.py's validate_id. */
static int valid_id(const char *id)
{
	if (!*id || strcmp(id, ".") == 0 || strcmp(id, "..") == 0)
		return 0;
	for (const char *c = id; *c; c++) {
		if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
		      (*c >= '0' && *c <= '9') || *c == '_' || *c == '+' || *c == '-' || *c == '.'))
			return 0;
	}
	return 1;
}

/* msg as a JSON string body (what runtime/jsonio.dumps writes for ASCII text). */
static void escape(char *out, size_t size, const char *msg)
{
	size_t o = 0;
	for (const unsigned char *c = (const unsigned char *)msg; *c && o + 7 < size; c++) {
		if (*c == '"' || *c == '\\') {
			out[o++] = '\\';
			out[o++] = (char)*c;
		} else if (*c == '\n' || *c == '\t' || *c == '\r') {
			out[o++] = '\\';
			out[o++] = *c == '\n' ? 'n' : *c == '\t' ? 't' : 'r';
		} else if (*c < 0x20 || *c >= 0x7f) {
			o += (size_t)snprintf(out + o, size - o, "\\u%04x", *c);
		} else {
			out[o++] = (char)*c;
		}
	}
	out[o] = '\0';
}

/* runtime/log.py's error line: logrus text on stderr, and text or JSON in --log. */
static void log_error(const struct invocation *inv, const char *msg)
{
	char when[32], text[2 * PATH_MAX], line[2 * PATH_MAX + 128];
	time_t now = time(NULL);
	struct tm tm;
	int n;
	strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
	escape(text, sizeof text, msg);
	n = snprintf(line, sizeof line, "time=\"%s\" level=error msg=\"%s\"\n", when, text);
	if (inv->log) {
		int fd = open(inv->log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
		if (fd >= 0) {
			char json[2 * PATH_MAX + 128];
			int m = snprintf(json, sizeof json,
					 "{\"level\": \"error\", \"msg\": \"%s\", \"time\": \"%s\"}\n",
					 text, when);
			if (inv->log_json)
				(void)!write(fd, json, (size_t)m);
			else
				(void)!write(fd, line, (size_t)n);
			close(fd);
		}
	}
	(void)!write(2, line, (size_t)n);
}

/* Field 22 of /proc/PID/stat (start time in clock ticks); 0 if gone or a zombie. */
static unsigned long long proc_start_time(long pid)
{
	char path[64], buf[4096];
	ssize_t n;
	int fd;
	snprintf(path, sizeof path, "/proc/%ld/stat", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	char *p = strrchr(buf, ')'); /* comm may hold spaces and parentheses */
	if (!p || p[1] != ' ')
		return 0;
	p += 2;
	if (*p == 'Z' || *p == 'X')
		return 0;
	for (int field = 0; field < 19; field++) {
		p = strchr(p, ' ');
		if (!p)
			return 0;
		p++;
	}
	return strtoull(p, NULL, 10);
}

struct record {
	long pid;
	unsigned long long pid_start;
	char cgroup_dir[PATH_MAX];
};

/* The record create wrote: its header, "PID START", then the cgroup's directory. */
static int read_record(int dirfd, struct record *r)
{
	char buf[PATH_MAX + 128];
	size_t header = strlen(RECORD_HEADER);
	ssize_t n;
	char *p, *end;
	int fd = openat(dirfd, RECORD, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0 || (size_t)n <= header || memcmp(buf, RECORD_HEADER, header) != 0)
		return 0;
	buf[n] = '\0';
	p = buf + header;
	errno = 0;
	r->pid = strtol(p, &end, 10);
	if (errno || end == p || *end != ' ' || r->pid <= 0)
		return 0;
	p = end + 1;
	r->pid_start = strtoull(p, &end, 10);
	if (errno || end == p || *end != '\n' || r->pid_start == 0)
		return 0;
	p = end + 1;
	end = strchr(p, '\n');
	if (!end || end[1] != '\0' || *p != '/' || (size_t)(end - p) >= sizeof r->cgroup_dir)
		return 0;
	memcpy(r->cgroup_dir, p, (size_t)(end - p));
	r->cgroup_dir[end - p] = '\0';
	return 1;
}

/* The container's directory, locked as runtime/state.py's ContainerDir.lock() does,
 * and the record; hands over when either is missing. */
static int open_container(const struct invocation *inv, char *path, struct record *r)
{
	int dirfd;
	if (!valid_id(inv->id))
		hand_over();
	if ((size_t)snprintf(path, PATH_MAX, "%s/%s", inv->root, inv->id) >= PATH_MAX)
		hand_over();
	dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0 || flock(dirfd, LOCK_EX) != 0 || !read_record(dirfd, r))
		hand_over();
	return dirfd;
}

static long long monotonic_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* runtime/start.py's start for a container with no poststart hooks. */
static int start(const struct invocation *inv)
{
	char path[PATH_MAX], msg[PATH_MAX + 256];
	struct record r;
	int dirfd = open_container(inv, path, &r);
	int fifo;
	long long deadline;
	if (proc_start_time(r.pid) != r.pid_start)
		hand_over(); /* stopped: Python says so */
	/* Opening the read end completes the init's blocked open for writing. No fifo:
	 * running, paused or half-deleted, which Python tells apart. */
	fifo = openat(dirfd, FIFO, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
	if (fifo < 0)
		hand_over();
	/* From here the init may be writing: the byte is this process's to read, so
	 * every outcome is reported here rather than handed over. */
	deadline = monotonic_ms() + START_TIMEOUT_MS;
	for (;;) {
		struct pollfd pfd = {.fd = fifo, .events = POLLIN};
		if (poll(&pfd, 1, POLL_MS) > 0) {
			char byte;
			if (read(fifo, &byte, 1) == 1 && byte == '0')
				break;
		}
		if (proc_start_time(r.pid) != r.pid_start) {
			log_error(inv, "the container's init exited before it could start");
			return 1;
		}
		if (monotonic_ms() >= deadline) {
			snprintf(msg, sizeof msg, "the init did not answer within %ds (container %s)",
				 START_TIMEOUT_MS / 1000, inv->id);
			log_error(inv, msg);
			return 1;
		}
		if (!(pfd.revents & POLLIN) && (pfd.revents & POLLHUP))
			usleep(POLL_MS * 1000); /* the writer closed without a byte: the init is dying */
	}
	close(fifo);
	if (unlinkat(dirfd, FIFO, 0) != 0) {
		snprintf(msg, sizeof msg, "%s: %s/" FIFO, strerror(errno), path);
		log_error(inv, msg);
		return 1;
	}
	return 0;
}

/* Remove what runtime/state.py's ContainerDir.remove() removes: the files of the
 * directory, then the directory. False if anything else is there. */
static int remove_container_dir(int dirfd, const char *path)
{
	int fd = fcntl(dirfd, F_DUPFD_CLOEXEC, 0); /* closedir closes this one */
	DIR *dir;
	struct dirent *e;
	int ok = 1;
	if (fd < 0 || !(dir = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	while ((e = readdir(dir))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (unlinkat(dirfd, e->d_name, 0) != 0 && errno != ENOENT) {
			ok = 0;
			break;
		}
	}
	closedir(dir);
	return ok && rmdir(path) == 0;
}

/* "populated 0" in the cgroup's cgroup.events, waited for as cgroups/event_wait.py
 * does: poll(2) wakes with POLLPRI when the kernel notifies the file, and the file is
 * re-read after 1, 2, 4... ms besides (the kernel delays notifications that come
 * within 10 ms of the last). False if the cgroup is still populated at the deadline. */
static int wait_until_empty(const char *cgroup_dir)
{
	char path[PATH_MAX + 32], buf[256];
	long long deadline = monotonic_ms() + DESTROY_TIMEOUT_MS;
	int slice = 1, fd;
	snprintf(path, sizeof path, "%s/cgroup.events", cgroup_dir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	for (;;) {
		ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
		if (n < 0) {
			close(fd);
			return errno == ENODEV; /* removed meanwhile: empty */
		}
		buf[n] = '\0';
		if (strncmp(buf, "populated 0\n", 12) == 0 || strstr(buf, "\npopulated 0\n")) {
			close(fd);
			return 1;
		}
		long long left = deadline - monotonic_ms();
		if (left <= 0) {
			close(fd);
			return 0;
		}
		struct pollfd pfd = {.fd = fd, .events = POLLPRI};
		poll(&pfd, 1, (int)(left < slice ? left : slice));
		slice = slice * 2 > 1000 ? 1000 : slice * 2;
	}
}

/* SIGKILL to everything in the cgroup (cgroup.kill, Linux >= 5.14), then wait until it
 * is empty. False when that cannot be done here: Python's cgroup manager has the
 * other ways (freeze and kill one by one, sub-cgroups, its own error messages). */
static int kill_cgroup(const char *cgroup_dir)
{
	char path[PATH_MAX + 32];
	int fd, ok;
	snprintf(path, sizeof path, "%s/cgroup.kill", cgroup_dir);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ok = write(fd, "1", 1) == 1;
	close(fd);
	return ok && wait_until_empty(cgroup_dir);
}

/* runtime/delete.py's delete: a stopped container, a created one, or with --force any;
 * its cgroup a leaf that cgroup.kill empties. */
static int delete(const struct invocation *inv)
{
	char path[PATH_MAX], parent[PATH_MAX];
	struct record r;
	int dirfd = open_container(inv, path, &r);
	char *slash;
	if (faccessat(dirfd, STATE, F_OK, AT_SYMLINK_NOFOLLOW) != 0)
		hand_over();
	if (proc_start_time(r.pid) == r.pid_start) {
		/* Created (the fifo is there) goes without --force; running or paused needs
		 * it, and Python words the refusal. */
		int created = faccessat(dirfd, FIFO, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
		if (!created && !inv->force)
			hand_over();
		if (!kill_cgroup(r.cgroup_dir))
			hand_over();
	}
	if (rmdir(r.cgroup_dir) != 0 && errno != ENOENT)
		hand_over(); /* sub-cgroups, or a process joined: the cgroup manager's work */
	if (proc_start_time(r.pid) == r.pid_start)
		hand_over(); /* the init outlived its cgroup: Python kills it by PID */
	/* runtime/state.py's remove_empty_parent: Pinnace's default parent goes with its
	 * last container. */
	strcpy(parent, r.cgroup_dir);
	slash = strrchr(parent, '/');
	if (slash && slash != parent) {
		*slash = '\0';
		const char *base = strrchr(parent, '/');
		if (base && strcmp(base + 1, DEFAULT_CGROUP_PARENT) == 0)
			rmdir(parent);
	}
	/* The cgroup is gone; if the directory cannot be removed here, Python's delete
	 * (which finds no cgroup to remove) does the rest. */
	if (!remove_container_dir(dirfd, path))
		hand_over();
	return 0;
}

int main(int argc, char **argv)
{
	struct invocation inv;
	program_argv = argv;
	if (!parse(argc, argv, &inv))
		hand_over();
	if (strcmp(inv.verb, "start") == 0)
		return start(&inv);
	return delete(&inv);
}
