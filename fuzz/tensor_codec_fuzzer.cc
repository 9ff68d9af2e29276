// A wire dino.v1.Tensor (protobuf bytes) through both decoders: the server's
// (server/frontend/tensor_codec: to a torch::Tensor viewing the message) and the client's
// (client/tensor_codec: to an NpyArray). Each must refuse what the other refuses, and what
// they accept must encode back to the same dtype, shape and bytes.
#include <cstdint>
#include <cstring>

#include "client/tensor_codec.h"
#include "fuzz/require.h"
#include "server/frontend/tensor_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using dino::fuzz::Require;
  dino::v1::Tensor message;
  if (!message.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto served = dino::frontend::DecodeTensor(message, /*present=*/true, "m");
  auto client = dino::client::DecodeTensor(message, "m");
  Require(served.ok() == client.ok(), "the server and client decoders disagree on a tensor");
  if (!served.ok()) return 0;

  dino::v1::Tensor again;
  dino::frontend::EncodeTensor(*served, dino::v1::DTYPE_UNSPECIFIED, &again);
  Require(again.dtype() == message.dtype(), "EncodeTensor changed the dtype");
  Require(again.shape_size() == message.shape_size() &&
              std::equal(again.shape().begin(), again.shape().end(), message.shape().begin()),
          "EncodeTensor changed the shape");
  Require(again.data() == message.data(), "EncodeTensor changed the bytes");

  dino::v1::Tensor from_client;
  Require(dino::client::EncodeTensor(*client, &from_client, "m").ok(),
          "the client cannot encode what it decoded");
  Require(from_client.data() == message.data(), "the client's round trip changed the bytes");
  return 0;
}
