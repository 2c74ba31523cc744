// The consumer process of the kill tests; its body and usage are in
// ../harness/stream_worker_main.cc, shared with idem_streams_demo.
#include "streams_harness.h"

int main(int argc, char** argv) { return idem::streams_harness::StreamWorkerMain(argc, argv); }
