#pragma once
// The subcommands of simclr-loss and their flags, with what --help says of each: shared by the
// command and the command-line fuzzer (fuzz/fuzz_cli.cpp), so that the fuzzer parses exactly what
// the command accepts.

#include <map>
#include <string>
#include <vector>

#include "bench.hpp"
#include "cli.hpp"
#include "simclr/engine.hpp"

namespace simclr::tools {

// The flags that make the loss, shared by `compute` and `config`.
inline std::vector<FlagSpec> loss_flags() {
  return {
      {"temperature", "T", "the temperature tau of the logits, a finite number > 0", "0.05",
       "--temperature 0.1"},
      {"reduction", "R", "the Keras reduction: auto, none, sum or sum_over_batch_size", "auto",
       "--reduction sum"},
      {"name", "S", "the loss's name in its config", "none (null)", "--name simclr"},
      {"config", "CFG.json",
       "a get_config() JSON (or the Keras wrapper) instead of --temperature, --reduction, --name",
       "none", "--config cfg.json"},
  };
}

inline CommandSpec compute_spec() {
  CommandSpec spec;
  spec.help = "the loss and its gradients of two views of embeddings in .npy files";
  spec.example = "compute --za a.npy --zb b.npy --temperature 0.1 --grad-a-out ga.npy";
  spec.flags = {
      {"za", "A.npy", "the first view: a 2-D [N, d] float32 or float64 .npy file", "required",
       "--za a.npy"},
      {"zb", "B.npy", "the second view: the same shape and dtype as --za", "required",
       "--zb b.npy"},
  };
  for (FlagSpec& f : loss_flags()) spec.flags.push_back(std::move(f));
  const std::vector<FlagSpec> rest = {
      {"sample-weight", "W.npy", "sample weights: [], [N], [N, 1], [1] or [1, 1]",
       "none (every weight 1)", "--sample-weight w.npy"},
      {"negatives", "K.npy",
       "extra negatives: a 2-D [K, d] .npy file of the views' dtype whose rows every anchor also "
       "contrasts with (a memory bank; under mpirun every rank reads all of it)",
       "none", "--negatives bank.npy"},
      {"temperature-gradient", "", "also prints dJ/dT (\"grad_temperature\", over every rank)",
       "not printed", "--temperature-gradient"},
      {"loss-out", "L.npy",
       "writes the loss: per example [N] for none, else one per rank ([1] locally)", "not written",
       "--loss-out loss.npy"},
      {"grad-a-out", "GA.npy", "writes dJ/dza [N, d] in the input dtype", "not written",
       "--grad-a-out ga.npy"},
      {"grad-b-out", "GB.npy", "writes dJ/dzb [N, d] in the input dtype", "not written",
       "--grad-b-out gb.npy"},
      {"split", "n0,n1,...", "under mpirun: the rows of each rank, summing to N",
       "as even as possible, the extra rows on the earlier ranks", "--split 3,4"},
      {"global-batch-size", "N|infer",
       "the global batch size of tf.nn.compute_average_loss, a count or infer",
       "none (needed under mpirun by auto and sum_over_batch_size)", "--global-batch-size infer"},
      {"threads", "t", "OpenMP threads, 0 for all the process may use", "0", "--threads 4"},
      {"memory-budget", "BYTES", "bytes the engine may keep a block of logits in",
       std::to_string(EngineOptions{}.memory_budget_bytes), "--memory-budget 0"},
      {"schedule", "auto|own_rows|balanced",
       "under mpirun: which rank computes which blocks of logits", "auto", "--schedule balanced"},
  };
  spec.flags.insert(spec.flags.end(), rest.begin(), rest.end());
  return spec;
}

inline CommandSpec config_spec() {
  return {"prints the get_config() JSON of the loss the flags make", "config --temperature 0.1",
          loss_flags()};
}

inline const CommandSpecs& command_specs() {
  static const CommandSpecs specs = {
      {"compute", compute_spec()},
      {"config", config_spec()},
      {"bench", bench_spec()},
  };
  return specs;
}

}  // namespace simclr::tools
